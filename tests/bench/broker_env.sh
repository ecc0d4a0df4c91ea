# Sourced by the bench scripts that need a broker (mqtt.sh, data_usage.sh,
# peer/verify.sh): start_broker [CONFIG_LINE...] starts Mosquitto on 127.0.0.1:$PORT with
# its configuration and log under $TMP, and sets BROKER to its pid (the caller's clean-up
# stops it). Extra lines go into the configuration (e.g. "max_queued_messages 0").
start_broker() {
    {
        echo "listener $PORT 127.0.0.1"
        echo "allow_anonymous true"
        for line in "$@"; do echo "$line"; done
        echo "persistence false"
        if [ "$(id -u)" -eq 0 ]; then echo "user root"; fi
    } > "$TMP/mosquitto.conf"
    mosquitto -c "$TMP/mosquitto.conf" > "$TMP/broker.log" 2>&1 &
    BROKER=$!
    sleep 0.5
}
