"""Watching AoE traffic: live capture and ping (`aoe sniff`, `aoe ping`), pcap files
(`aoe decode`), and scapy layers for crafting and dissecting frames."""
