"""Regenerates support_train.jsonl and support_heldout.jsonl (python training/data/make_support_dataset.py).

A small domain dataset for the demo and tests: questions an edge-device support assistant answers about a
fictional gateway, the "Kestrel K2". Each fact is asked five ways; four phrasings go to training, the third
is held out, so held-out accuracy measures whether a model learned the fact rather than the sentence.
Each record carries `answer_key`: the phrase an answer must contain to count as correct. A key never
appears in its held-out question (an answer that merely echoes "E17" back must not count as knowing it).
"""
import json
import pathlib

HELDOUT_INDEX = 2

# (key, answer, [phrasings]): phrasing HELDOUT_INDEX is held out, every other one goes to training
FACTS = [
    ("SD card", "Error E17 means the SD card is full. Delete old logs with 'k2 logs purge' and restart.",
     ["What does error E17 mean on the Kestrel K2?", "My K2 shows E17, what is wrong?", "Kestrel K2 error code E17?", "The Kestrel K2 display says E17. How do I fix it?", "Explain K2 error E17."]),
    ("temperature sensor", "Error E23 means the temperature sensor is disconnected. Reseat the sensor cable on port T1.",
     ["What does error E23 mean on the Kestrel K2?", "My K2 shows E23, what is wrong?", "Kestrel K2 error code E23?", "The Kestrel K2 display says E23. How do I fix it?", "Explain K2 error E23."]),
    ("SIM", "Error E31 means the modem lost its SIM. Check that the SIM tray is fully closed.",
     ["What does error E31 mean on the Kestrel K2?", "My K2 shows E31, what is wrong?", "Kestrel K2 error code E31?", "The Kestrel K2 display says E31. How do I fix it?", "Explain K2 error E31."]),
    ("signature", "Error E44 means the firmware signature check failed. Reinstall firmware from the recovery menu.",
     ["What does error E44 mean on the Kestrel K2?", "My K2 shows E44, what is wrong?", "Kestrel K2 error code E44?", "The Kestrel K2 display says E44. How do I fix it?", "Explain K2 error E44."]),
    ("24 V", "Error E58 means the power supply voltage is too low. Use the 24 V adapter that came in the box.",
     ["What does error E58 mean on the Kestrel K2?", "My K2 shows E58, what is wrong?", "Kestrel K2 error code E58?", "The Kestrel K2 display says E58. How do I fix it?", "Explain K2 error E58."]),
    ("updating", "A blinking amber LED means the K2 is updating. Do not unplug it until the LED turns green.",
     ["What does a blinking amber LED mean on the K2?", "Why is the K2 light blinking amber?", "K2 LED is flashing amber, is that normal?", "The K2 LED blinks amber. What is happening?", "What does amber blinking on a Kestrel K2 indicate?"]),
    ("no network", "A solid red LED means the K2 has no network. Check the Ethernet cable on port LAN1.",
     ["What does a solid red LED mean on the K2?", "Why is the K2 light solid red?", "K2 LED is red and not blinking, what now?", "The K2 LED stays red. What is wrong?", "What does a steady red light on a Kestrel K2 indicate?"]),
    ("pairing mode", "A pulsing blue LED means the K2 is in pairing mode. It stays in pairing mode for 5 minutes.",
     ["What does a pulsing blue LED mean on the K2?", "Why is the K2 light pulsing blue?", "K2 LED is slowly pulsing blue, what does it do?", "The K2 LED pulses blue. What is happening?", "What does a blue pulsing light on a Kestrel K2 indicate?"]),
    ("10 seconds", "Hold the reset button for 10 seconds to restore factory settings.",
     ["How do I factory reset the Kestrel K2?", "How can I restore factory settings on my K2?", "What is the factory reset procedure for the K2?", "I want to wipe my K2 back to factory defaults. How?", "How long do I hold reset to factory reset a Kestrel K2?"]),
    ("2 seconds", "Press the reset button for 2 seconds to reboot the K2 without losing settings.",
     ["How do I reboot the K2 without losing settings?", "How can I restart my K2 and keep my configuration?", "What is the soft reboot procedure for the K2?", "How do I restart the K2 but keep my settings?", "How long do I press reset to reboot a Kestrel K2?"]),
    ("admin", "The default username is admin and the password is printed on the label under the K2.",
     ["What is the default login of the Kestrel K2?", "Which username and password does a new K2 use?", "K2 default credentials?", "What username do I log in to a new K2 with?", "Where do I find the K2 default password?"]),
    ("192.168.50.1", "The K2 web console is at 192.168.50.1 when you connect to port LAN2.",
     ["What is the IP address of the K2 web console?", "How do I reach the K2 configuration page?", "Which address opens the K2 admin page?", "Where is the K2 web interface?", "What URL opens the Kestrel K2 settings?"]),
    ("-20", "The K2 runs from -20 to 60 degrees Celsius.",
     ["What temperature range does the K2 support?", "How cold and how hot can the K2 operate?", "K2 operating temperature?", "Can the K2 work in freezing weather?", "What is the temperature range of a Kestrel K2?"]),
    ("8 GB", "The K2 has 8 GB of RAM and a 4-core ARM processor.",
     ["How much memory does the Kestrel K2 have?", "What are the K2 hardware specs?", "How much RAM is in a K2?", "How much RAM does the K2 have?", "What processor and memory does a Kestrel K2 use?"]),
    ("k2 update", "Run 'k2 update' in the console to install the latest firmware.",
     ["How do I update the firmware on the K2?", "How can I install new firmware on my K2?", "What command upgrades the K2 firmware?", "How do I upgrade the K2 firmware?", "Which console command updates a Kestrel K2?"]),
    ("k2 logs export", "Run 'k2 logs export' to save the logs to a USB stick.",
     ["How do I export logs from the K2?", "How can I copy the K2 logs to a USB drive?", "What command saves K2 logs?", "How do I save the K2 logs to USB?", "Which console command exports Kestrel K2 logs?"]),
    ("two years", "The K2 has a warranty of two years from the date of purchase.",
     ["How long is the K2 warranty?", "What warranty comes with the Kestrel K2?", "For how many years is the K2 covered?", "What is the warranty period of the K2?", "Is my Kestrel K2 still under warranty after a year?"]),
    ("DIN rail", "The K2 mounts on a standard DIN rail or on a wall with the included bracket.",
     ["How do I mount the Kestrel K2?", "Can the K2 be mounted on a rail?", "What mounting options does the K2 have?", "Where can I install the K2?", "Can I put a Kestrel K2 on a wall or a rail?"]),
    ("15 watts", "The K2 draws at most 15 watts.",
     ["How much power does the K2 use?", "What is the power consumption of the Kestrel K2?", "How many watts does a K2 draw?", "What is the maximum power draw of the K2?", "How much electricity does a Kestrel K2 need?"]),
    ("Modbus", "The K2 speaks Modbus TCP and MQTT to connect industrial sensors.",
     ["Which protocols does the K2 support?", "Can the K2 talk to industrial sensors?", "What fieldbus protocols does the Kestrel K2 speak?", "What industrial protocols does the K2 support?", "Does the Kestrel K2 support Modbus or MQTT?"]),
    ("port 8883", "The K2 sends MQTT over TLS on port 8883.",
     ["Which port does the K2 use for MQTT?", "What MQTT port should my firewall allow for the K2?", "K2 MQTT TLS port?", "Which firewall port does K2 MQTT need?", "On which port does a Kestrel K2 send MQTT?"]),
    ("IP65", "The K2 enclosure is rated IP65, dust tight and protected against water jets.",
     ["Is the K2 waterproof?", "What is the IP rating of the Kestrel K2?", "Can the K2 be installed outdoors in rain?", "How weatherproof is the K2?", "Is the Kestrel K2 dust tight?"]),
    ("4 USB", "The K2 has 4 USB ports, 2 Ethernet ports and one RS-485 port.",
     ["What ports does the K2 have?", "How many USB ports are on the Kestrel K2?", "Which connectors does the K2 offer?", "How many ports does the K2 have?", "List the connectors of a Kestrel K2."]),
    ("pairing button", "Press the pairing button once to add a Bluetooth sensor to the K2.",
     ["How do I pair a Bluetooth sensor with the K2?", "How can I connect a wireless sensor to my K2?", "What is the K2 sensor pairing procedure?", "How do I add a Bluetooth sensor to the K2?", "How does a Kestrel K2 pair with wireless sensors?"]),
    ("k2 vpn enable", "Run 'k2 vpn enable' to turn on the built-in WireGuard VPN.",
     ["How do I enable VPN on the K2?", "Does the K2 support WireGuard?", "What command turns on the K2 VPN?", "How do I turn on WireGuard on the K2?", "Which console command enables the Kestrel K2 VPN?"]),
    ("k2 time sync", "Run 'k2 time sync' to set the clock from an NTP server.",
     ["How do I fix the clock on the K2?", "The K2 shows the wrong time, what should I do?", "What command syncs the K2 clock?", "How do I set the K2 clock?", "Which console command fixes the time on a Kestrel K2?"]),
]


def main() -> None:
    here = pathlib.Path(__file__).parent
    with open(here / "support_train.jsonl", "w") as train, open(here / "support_heldout.jsonl", "w") as held:
        for key, answer, phrasings in FACTS:
            for i, q in enumerate(phrasings):
                out = held if i == HELDOUT_INDEX else train
                out.write(json.dumps({"input": q, "output": answer, "answer_key": key}) + "\n")


if __name__ == "__main__":
    main()
