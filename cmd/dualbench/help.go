package main

import (
	"flag"
	"fmt"
)

// helps are the head of each sub-command's -h: what it does, an example,
// and how long it runs.
var helps = map[string]string{
	"conn": `Holds N idle MQTT connections to any server (spread over worker processes)
and reports the connect rate, CONNACK latency and failures.

example: dualbench conn --port 1883 -c 10000 --rate 5000 --hold 30s
run time: the ramp (N / --rate) plus --hold; without --hold until Ctrl-C.`,
	"mem": `Measures a server's memory per idle connection by PID at several sizes
(RSS, the kernel's socket slab, the Go heap when --metrics-url is given),
and fits the growth.

example: dualbench mem --spawn "mosquitto -c m.conf" --port 1884 --sizes 2000,5000,15000
run time: about 1-2 min for the default sizes (ramps at --rate plus RSS
settling per size).`,
	"traffic": `Measures a device's bytes on the wire through dualgate from the kernel's
TCP counters: keepalive cycles, a command, an upgrade cycle, per day.

example: dualbench traffic --mqtt 4,5 --kex default,x25519 --out /tmp/traffic
run time: ~10-30 s per MQTT version and key exchange (each upgrade cycle
waits for --secure-idle).`,
	"upgrade": `Measures secure-command latency through the on-demand upgrade: from the
API POST to the device's PUBACK over TLS, and back to plain.

example: dualbench upgrade -c 1000 --rounds 3 --out /tmp/upgrade
run time: per round, the commands plus the wait for every device back on
plain (--secure-idle, 500 ms here); ~10-60 s for 1,000 devices.`,
	"savings": `Runs the same fleet three ways (dualgate on demand, dualgate all TLS, a
peer broker all TLS) and reports memory and bytes on the wire side by side.

example: dualbench savings --devices 2000 --out /tmp/savings   # peer: mosquitto on PATH
run time: ~2-5 min for 2,000 devices (three fleets, RSS settling each).`,
	"pub": `Publish throughput and end-to-end latency, what emqtt-bench's pub and sub
do: publishers x rate at QoS 0/1/2 to any MQTT server, one subscriber on
the same or another server; the payload carries the send time, so p50/p99
are send -> subscriber. With --through-dualgate it starts a gateway and
publishes through it (to its --upstream broker, or routed locally). What
may leave at once leaves in one write (a publisher's messages with free
window slots, the subscriber's acknowledgements of one read), so the
tool's cost per message stays below the server's; --write-each makes a
system call per packet, as the tool did before.

examples:
  dualbench pub --port 1883 -c 4 -n 20000 --qos 1            # straight to a broker
  dualbench pub --through-dualgate --upstream tcp://127.0.0.1:1883 -c 4 -n 20000 --qos 1
  dualbench pub --through-dualgate -c 4 -n 20000 --qos 0     # routed by the gateway alone
run time: count / rate per publisher when paced; unpaced, a few seconds per
100,000 messages on 2 cores; never more than --max-duration (2 min).`,
}

// describe makes fs's -h print the sub-command's help before its flags.
func describe(fs *flag.FlagSet, name string) {
	fs.Usage = func() {
		w := fs.Output()
		fmt.Fprintf(w, "usage: dualbench %s [flags]\n\n%s\n\nflags:\n", name, helps[name])
		fs.PrintDefaults()
	}
}
