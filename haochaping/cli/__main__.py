from haochaping.cli import main

main()
