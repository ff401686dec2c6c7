"""Test doubles that ship with mqi (the demo uses them): the MOQUI stand-in and the synthetic case builder."""
