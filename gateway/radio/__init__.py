"""Radio, the first stage: the LoRa module on its serial port -> `RadioFrame`s.

A dialect speaks one module's AT commands and turns its lines into frames; the serial link
opens the port, sets the module up and reads it.
"""
