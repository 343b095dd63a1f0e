"""The router daemon (`codepool serve`)."""
