from trainyard_client.cli.app import main

main()
