"""Regenerates support_train.jsonl and support_heldout.jsonl (python training/data/make_support_dataset.py).

A small domain dataset for the demo and tests: questions an edge-device support assistant answers about a
fictional gateway, the "Kestrel K2". Each fact is asked three ways; two phrasings go to training, the third
is held out, so held-out accuracy measures whether a model learned the fact rather than the sentence.
Each record carries `answer_key`: the phrase an answer must contain to count as correct.
"""
import json
import pathlib

# (key, answer, [three phrasings])
FACTS = [
    ("E17", "Error E17 means the SD card is full. Delete old logs with 'k2 logs purge' and restart.",
     ["What does error E17 mean on the Kestrel K2?", "My K2 shows E17, what is wrong?", "Kestrel K2 error code E17?"]),
    ("E23", "Error E23 means the temperature sensor is disconnected. Reseat the sensor cable on port T1.",
     ["What does error E23 mean on the Kestrel K2?", "My K2 shows E23, what is wrong?", "Kestrel K2 error code E23?"]),
    ("E31", "Error E31 means the modem lost its SIM. Check that the SIM tray is fully closed.",
     ["What does error E31 mean on the Kestrel K2?", "My K2 shows E31, what is wrong?", "Kestrel K2 error code E31?"]),
    ("E44", "Error E44 means the firmware signature check failed. Reinstall firmware from the recovery menu.",
     ["What does error E44 mean on the Kestrel K2?", "My K2 shows E44, what is wrong?", "Kestrel K2 error code E44?"]),
    ("E58", "Error E58 means the power supply voltage is too low. Use the 24 V adapter that came in the box.",
     ["What does error E58 mean on the Kestrel K2?", "My K2 shows E58, what is wrong?", "Kestrel K2 error code E58?"]),
    ("amber", "A blinking amber LED means the K2 is updating. Do not unplug it until the LED turns green.",
     ["What does a blinking amber LED mean on the K2?", "Why is the K2 light blinking amber?", "K2 LED is flashing amber, is that normal?"]),
    ("red", "A solid red LED means the K2 has no network. Check the Ethernet cable on port LAN1.",
     ["What does a solid red LED mean on the K2?", "Why is the K2 light solid red?", "K2 LED is red and not blinking, what now?"]),
    ("blue", "A pulsing blue LED means the K2 is in pairing mode. It stays in pairing mode for 5 minutes.",
     ["What does a pulsing blue LED mean on the K2?", "Why is the K2 light pulsing blue?", "K2 LED is slowly pulsing blue, what does it do?"]),
    ("10 seconds", "Hold the reset button for 10 seconds to restore factory settings.",
     ["How do I factory reset the Kestrel K2?", "How can I restore factory settings on my K2?", "What is the factory reset procedure for the K2?"]),
    ("2 seconds", "Press the reset button for 2 seconds to reboot the K2 without losing settings.",
     ["How do I reboot the K2 without losing settings?", "How can I restart my K2 and keep my configuration?", "What is the soft reboot procedure for the K2?"]),
    ("admin", "The default username is admin and the password is printed on the label under the K2.",
     ["What is the default login of the Kestrel K2?", "Which username and password does a new K2 use?", "K2 default credentials?"]),
    ("192.168.50.1", "The K2 web console is at 192.168.50.1 when you connect to port LAN2.",
     ["What is the IP address of the K2 web console?", "How do I reach the K2 configuration page?", "Which address opens the K2 admin page?"]),
    ("-20", "The K2 runs from -20 to 60 degrees Celsius.",
     ["What temperature range does the K2 support?", "How cold and how hot can the K2 operate?", "K2 operating temperature?"]),
    ("8 GB", "The K2 has 8 GB of RAM and a 4-core ARM processor.",
     ["How much memory does the Kestrel K2 have?", "What are the K2 hardware specs?", "How much RAM is in a K2?"]),
    ("k2 update", "Run 'k2 update' in the console to install the latest firmware.",
     ["How do I update the firmware on the K2?", "How can I install new firmware on my K2?", "What command upgrades the K2 firmware?"]),
    ("k2 logs export", "Run 'k2 logs export' to save the logs to a USB stick.",
     ["How do I export logs from the K2?", "How can I copy the K2 logs to a USB drive?", "What command saves K2 logs?"]),
    ("two years", "The K2 has a warranty of two years from the date of purchase.",
     ["How long is the K2 warranty?", "What warranty comes with the Kestrel K2?", "For how many years is the K2 covered?"]),
    ("DIN rail", "The K2 mounts on a standard DIN rail or on a wall with the included bracket.",
     ["How do I mount the Kestrel K2?", "Can the K2 be mounted on a rail?", "What mounting options does the K2 have?"]),
    ("15 watts", "The K2 draws at most 15 watts.",
     ["How much power does the K2 use?", "What is the power consumption of the Kestrel K2?", "How many watts does a K2 draw?"]),
    ("Modbus", "The K2 speaks Modbus TCP and MQTT to connect industrial sensors.",
     ["Which protocols does the K2 support?", "Can the K2 talk to industrial sensors?", "What fieldbus protocols does the Kestrel K2 speak?"]),
    ("port 8883", "The K2 sends MQTT over TLS on port 8883.",
     ["Which port does the K2 use for MQTT?", "What MQTT port should my firewall allow for the K2?", "K2 MQTT TLS port?"]),
    ("IP65", "The K2 enclosure is rated IP65, dust tight and protected against water jets.",
     ["Is the K2 waterproof?", "What is the IP rating of the Kestrel K2?", "Can the K2 be installed outdoors in rain?"]),
    ("4 USB", "The K2 has 4 USB ports, 2 Ethernet ports and one RS-485 port.",
     ["What ports does the K2 have?", "How many USB ports are on the Kestrel K2?", "Which connectors does the K2 offer?"]),
    ("pairing button", "Press the pairing button once to add a Bluetooth sensor to the K2.",
     ["How do I pair a Bluetooth sensor with the K2?", "How can I connect a wireless sensor to my K2?", "What is the K2 sensor pairing procedure?"]),
    ("k2 vpn", "Run 'k2 vpn enable' to turn on the built-in WireGuard VPN.",
     ["How do I enable VPN on the K2?", "Does the K2 support WireGuard?", "What command turns on the K2 VPN?"]),
    ("k2 time sync", "Run 'k2 time sync' to set the clock from an NTP server.",
     ["How do I fix the clock on the K2?", "The K2 shows the wrong time, what should I do?", "What command syncs the K2 clock?"]),
]


def main() -> None:
    here = pathlib.Path(__file__).parent
    with open(here / "support_train.jsonl", "w") as train, open(here / "support_heldout.jsonl", "w") as held:
        for key, answer, (a, b, c) in FACTS:
            for q in (a, b):
                train.write(json.dumps({"input": q, "output": answer, "answer_key": key}) + "\n")
            held.write(json.dumps({"input": c, "output": answer, "answer_key": key}) + "\n")


if __name__ == "__main__":
    main()
