"""`python -m featalign.cache`: the name this CLI had before the package layout, kept working.

The command lives in `featalign.activations.cli` (`python -m featalign.activations`, console script
`featalign-cache`); import from there.
"""

if __name__ == "__main__":
    from featalign.activations.cli import cli

    cli("python -m featalign.cache")
