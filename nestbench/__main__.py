from nestbench.cli import main

main()
