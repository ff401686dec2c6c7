from mqi.cli import main

main()
