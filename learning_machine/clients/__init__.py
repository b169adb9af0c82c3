"""HTTP clients of the platform's own APIs: the gateway's REST API and the model server's V2 inference protocol."""
