"""duplex on Ray Serve (``duplex serve --ray``): several engines, on one machine's GPUs or many machines, behind one
address; a conversation stays on the engine that took it. docs/scaling.md says how to run it.

app.py starts and stops the application; replica.py is one replica (an engine process, backend.py, and the relay
in front of it, relay.py); router.py picks a replica for each new conversation; autoscale.py sizes the number of
replicas; board.py adds their figures up for /api/stats. Needs the ``ray`` extra (``pip install -e ".[ray]"``).
"""
