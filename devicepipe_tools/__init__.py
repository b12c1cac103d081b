"""devicepipe developer tooling: template, sample events, producer, local stack.

Never imported by Lambda code."""
