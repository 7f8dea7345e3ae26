"""The one compiled part of esctl: the hot path of ``migrate redis-to-pg`` (esctl/_fastrows.c).

Everything else is in pyproject.toml. The extension is optional: where it cannot be built (no C
compiler), the install still succeeds and esctl runs the same checks in Python, slower
(``esctl doctor`` says which path a migration takes).
"""

from setuptools import Extension, setup

setup(
    ext_modules=[
        Extension(
            "esctl._fastrows",
            ["esctl/_fastrows.c"],
            optional=True,
            extra_compile_args=["-O2", "-std=c11", "-Wall", "-Wextra", "-Wno-unused-parameter"],
        )
    ]
)
