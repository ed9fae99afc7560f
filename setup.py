"""Builds the compiled row masking core (jitgate/masking/_rowcore.c); everything else is in pyproject.toml.

The extension is optional at run time: without it the broker logs that it uses the
pure-Python reference (jitgate/masking/rows.py) and masks the same way, slower.
"""
from setuptools import Extension, setup

setup(ext_modules=[Extension("jitgate.masking._rowcore", ["jitgate/masking/_rowcore.c"], extra_compile_args=["-O2"])])
