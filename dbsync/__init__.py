# The version sent in the User-Agent; the same as pyproject.toml's (a test checks).
__version__ = "0.1.0"
