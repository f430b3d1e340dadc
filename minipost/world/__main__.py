"""python -m minipost.world --out DIR [--seed S]: write every split into DIR."""
from minipost.world.generate import main

main()
