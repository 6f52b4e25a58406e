from costtrace.cli import main

main()
