from hsconas_cli.cli import main

main()
