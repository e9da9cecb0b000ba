"""Uplink: `RadioFrame` -> LoRaWAN frame (MIC, replay, decrypt) -> Cayenne LPP -> `Reading`.

Or the same readings from ChirpStack, which checks and decrypts the frames itself. Every frame
refused on the way is a `Rejected` with its reason, counted and logged at a bounded rate.
"""
