from ofexp.cli import main

main()
