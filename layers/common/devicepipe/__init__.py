"""devicepipe runtime library: the code every Lambda function imports (shipped as the common layer)."""
