"""The embedded runtime of `lm up`: the process manager, the services as local processes, the embedded model server, and the doctor."""
