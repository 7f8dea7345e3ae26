"""The one compiled part of esctl: the hot paths of ``migrate redis-to-pg``, ``migrate verify``
and ``migrate --transforms`` (esctl/_fastrows.c, used through esctl/fastpath.py).

Everything else is in pyproject.toml. The extension is optional: where it cannot be built (no C
compiler), the install still succeeds and esctl runs the same checks in Python, with more CPU
per event (``esctl.fastpath.COMPILED`` tells which; README, "Install").
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
