"""stmorph.datasets"""
