//! MQTTER's person/thing client library on rumqttc (a later stage): IM API, thing API, P2P.
//!
//! Nothing is built here yet; tests drive the broker with rumqttc directly.
