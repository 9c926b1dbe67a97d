"""``python -m datamill.cli``: the same as the ``datamill`` command."""

from datamill.cli import main

if __name__ == "__main__":
    main()
