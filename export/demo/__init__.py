"""The demo model: a small Flash-VL-architecture model the project trains itself on synthetic scenes."""
