"""`python -m featalign.analyze`: the name this CLI had before the package layout, kept working.

The command lives in `featalign.analysis.cli` (`python -m featalign.analysis`, console script
`featalign-analyze`); import from there.
"""

if __name__ == "__main__":
    from featalign.analysis.cli import cli

    cli("python -m featalign.analyze")
