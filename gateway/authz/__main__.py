from gateway.authz.server import main

main()
