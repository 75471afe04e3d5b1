"""Appointments and stays (encounters). Behind carnet.phi."""
