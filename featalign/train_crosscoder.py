"""`python -m featalign.train_crosscoder`: the name this CLI had before the package layout, kept working.

The command lives in `featalign.crosscoder.cli` (`python -m featalign.crosscoder`, console script
`featalign-train-crosscoder`); import from there.
"""

if __name__ == "__main__":
    from featalign.crosscoder.cli import cli

    cli("python -m featalign.train_crosscoder")
