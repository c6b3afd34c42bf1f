"""Minimal setup.py: only what pyproject.toml cannot say (the cffi extension)."""

from setuptools import setup

setup()
