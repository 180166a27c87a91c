"""The door side: ``facegate door``, the agent beside each lock.

* ``verify``: ``check_event``, the verifier of one MQTT message (importable; never raises) and ``AcceptedKeys``;
* ``replay``: ``ReplayCache``, the on-disk memory of event ids already used;
* ``config``: the agent's YAML config (its own pydantic model);
* ``outputs``: what opens the lock (GPIO through libgpiod, a Shelly Gen2 HTTP relay, a command) and the fail-secure
  pulse controller;
* ``inputs``: door contact and request-to-exit (GPIO or MQTT) and the door state machine;
* ``homeassistant``: Home Assistant MQTT discovery payload builders (reusable by the daemon);
* ``agent``: the MQTT client that ties them together.

Layering: imports ``facegate.errors`` and ``facegate.signing`` only (never ``runtime``), so the daemon may import
``door.homeassistant`` and the door may run on a small machine without the recognition stack loaded.
"""
