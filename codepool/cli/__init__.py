"""The operator's command line: parse, load settings, call one core method, render."""
