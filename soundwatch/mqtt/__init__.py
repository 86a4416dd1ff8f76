"""Home Assistant over MQTT: a bridge from soundwatch's ZeroMQ messages to an MQTT broker.

``MqttConfig`` (the ``mqtt:`` section), ``MqttBridge`` (subscribe, translate, publish),
pure discovery payload builders in :mod:`soundwatch.mqtt.discovery`. Torch-free.
"""

from soundwatch.mqtt.bridge import MqttBridge
from soundwatch.mqtt.config import MqttConfig

__all__ = ["MqttBridge", "MqttConfig"]
