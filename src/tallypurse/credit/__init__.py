"""Cardholder-centred credit scoring: indicators, scorecard, grades and limits."""
