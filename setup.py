"""Builds the optional native scanner (tracekit/load/_scan.c); everything else is in
pyproject.toml. Where it cannot be compiled the install goes on without it and the loader
reads every trace with its pure-Python decoder (same frames)."""

from setuptools import Extension, setup

setup(
    ext_modules=[
        Extension(
            "tracekit.load._scan",
            ["tracekit/load/_scan.c"],
            optional=True,
            py_limited_api=True,
            define_macros=[("Py_LIMITED_API", "0x030B0000")],
            extra_compile_args=["-O2"],
        )
    ],
)
