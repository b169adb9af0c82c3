"""The learning loop: the monitor (windows, drift, realised performance), the retraining policy, the loop service that acts on it, and the data stream that feeds the gateway."""
