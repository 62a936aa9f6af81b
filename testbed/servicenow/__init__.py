"""A ServiceNow simulator for the test bed and the demo (development only).

The subset of the Table API and the Change Management API that kserve-canary uses, with
Basic and OAuth authentication, change states and approver records, faults on demand, and
the signed approval callback a customer's business rule would send. The behaviour it
implements, and the public ServiceNow documentation it follows, are in
``docs/SERVICENOW.md``; code comments cite its sections as ``SERVICENOW.md §x``.

    query.py    encoded queries (pure)         store.py   records and their rules
    render.py   how records are shown          signing.py Standard Webhooks signer
    server.py   the HTTP server + admin API    admin.py   a client of the admin API
    process.py  ServiceNowSim (a process)      cli.py     python -m testbed servicenow

Importing this package imports nothing else: ``python -m testbed --help`` stays fast.
"""
