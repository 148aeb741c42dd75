from services.audit_log.server import main

main()
