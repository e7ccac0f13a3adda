from bincli.cli import main

main()
