"""codepool: a VS Code in the browser for every user, on a pool that stops what nobody uses."""

__version__ = "0.2.0"
