"""python -m minipost.world --out DIR [--seed S]: write every split into DIR.
python -m minipost.world identity --name NEW --old-name OLD [--out DIR]: the identity lab's files (identity.py)."""
import sys

if sys.argv[1:2] == ["identity"]:
    from minipost.world.identity import main
    main(sys.argv[2:])
else:
    from minipost.world.generate import main
    main()
