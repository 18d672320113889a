from ndgeo.cli import main

main()
