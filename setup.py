"""The one compiled part of esctl: the hot paths of ``migrate redis-to-pg``, ``migrate verify``
and ``migrate --transforms`` (esctl/_fastrows_src/, used through esctl/fastpath.py).

Everything else is in pyproject.toml. The extension is optional: where it cannot be built (no C
compiler), the install still succeeds and esctl runs the same checks in Python, with more CPU
per event (``esctl.fastpath.COMPILED`` tells which; README, "Install").
"""

from pathlib import Path

from setuptools import Extension, setup

setup(
    ext_modules=[
        Extension(
            "esctl._fastrows",
            sorted(str(p) for p in Path("esctl/_fastrows_src").glob("*.c")),
            depends=["esctl/_fastrows_src/fastrows.h"],
            optional=True,
            # Only PyInit__fastrows is exported: the parts' own functions stay inside the module.
            extra_compile_args=[
                "-O2",
                "-std=c11",
                "-fvisibility=hidden",
                "-Wall",
                "-Wextra",
                "-Wno-unused-parameter",
            ],
        )
    ]
)
