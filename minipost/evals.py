"""`python -m minipost.evals`: the report card's command under its first name; the same as
`python -m minipost.card` (minipost/card/)."""
from minipost.card.__main__ import main

if __name__ == "__main__":
    main()
