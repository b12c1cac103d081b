"""devicepipe runtime library: the code every Lambda function imports (shipped as the common layer)."""

#: Reported by the read API's /health; kept equal to pyproject.toml's version (a test checks).
__version__ = "0.1.0"
