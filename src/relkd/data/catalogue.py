"""Generate the embedded e-commerce search-relevance dataset, every label fixed by construction.

A seeded catalogue of fictional products (category, brand, product line, model code, attributes)
is built first. Each shopper query is then written in its language (en, es, fr, pt) from a target
product, naming the category and, sometimes, the brand, the model and one attribute. Each judged
title is a product (or an accessory) picked because of *how* it differs from what the query states,
so its class in the 6-class AliExpress-style schema (`LABELS`) is known without any annotator:

  strongly relevant   matches every stated facet (an unstated facet may differ)
  brand mismatch      same category and stated attribute, another brand
  category mismatch   another category
  model mismatch      same brand and category, another model
  attribute mismatch  same brand/category/model as stated, the stated attribute differs
  accessory mismatch  an accessory of the queried product

Some pairs are deliberately hard (`hard_case_rate`): functional substitutes and locale synonyms
("earbuds" vs "In-Ear Headphones"), clones that differ from the target only by the brand, sibling
models one digit apart ("XR-4273" vs "XR-4278"), titles differing by one attribute token, related
categories of the same brand, and accessories whose titles repeat the product's full name.
Titles are English marketplace titles; queries are lower-case, in the query's language.
"""
from __future__ import annotations

import hashlib
import itertools
import random
from dataclasses import dataclass
import pandas as pd

from relkd.data import schema
from relkd.data.config import CATALOGUE_LANGUAGES, CatalogueConfig

LABELS = ("strongly relevant", "brand mismatch", "category mismatch", "model mismatch",
          "attribute mismatch", "accessory mismatch")
RELEVANT, BRAND, CATEGORY, MODEL, ATTRIBUTE, ACCESSORY = LABELS

# Construction type -> label. The second case of each label is its deliberately hard form.
CASES = {
    "exact": RELEVANT, "substitute": RELEVANT,
    "brand_swap": BRAND, "brand_near": BRAND,
    "other_category": CATEGORY, "category_near": CATEGORY,
    "model_other": MODEL, "model_near": MODEL,
    "attribute_swap": ATTRIBUTE, "attribute_near": ATTRIBUTE,
    "accessory": ACCESSORY, "accessory_named": ACCESSORY,
}
HARD_CASES = frozenset({"substitute", "brand_near", "category_near", "model_near", "attribute_near",
                        "accessory_named"})

# ----------------------------------------------------------------------------------- vocabulary
# Query languages: word orders differ per language; a prefix or suffix is shopper noise that
# names no facet (and shares no word with title noise, so a substitute query stays lexically apart).
LANGUAGES = {
    "en": {"templates": ("{brand} {model} {cat} {attr}", "{attr} {brand} {model} {cat}",
                         "{brand} {cat} {model} {attr}", "{cat} {brand} {model} {attr}"),
           "prefixes": ("buy", "cheap", "discount"), "suffixes": ("sale", "deal", "online")},
    "es": {"templates": ("{cat} {brand} {model} {attr}", "{cat} {attr} {brand} {model}",
                         "{brand} {model} {cat} {attr}"),
           "prefixes": ("comprar",), "suffixes": ("barato", "oferta", "envío gratis")},
    "fr": {"templates": ("{cat} {brand} {model} {attr}", "{brand} {model} {cat} {attr}",
                         "{cat} {attr} {brand} {model}"),
           "prefixes": ("acheter",), "suffixes": ("pas cher", "promo", "livraison gratuite")},
    "pt": {"templates": ("{cat} {brand} {model} {attr}", "{cat} {attr} {brand} {model}",
                         "{brand} {cat} {model} {attr}"),
           "prefixes": ("comprar",), "suffixes": ("barato", "promoção", "frete grátis")},
}
assert tuple(LANGUAGES) == CATALOGUE_LANGUAGES, "relkd.data.config.CATALOGUE_LANGUAGES names these languages"
# value -> (es, fr, pt); the English query word is the key, the title word its capitalised form.
COLOURS = {
    "black": ("negro", "noir", "preto"), "white": ("blanco", "blanc", "branco"),
    "silver": ("plateado", "argent", "prateado"), "blue": ("azul", "bleu", "azul"),
    "red": ("rojo", "rouge", "vermelho"), "green": ("verde", "vert", "verde"),
    "grey": ("gris", "gris", "cinza"), "pink": ("rosa", "rose", "rosa"),
}
MATERIALS = {
    "leather": ("de cuero", "en cuir", "de couro"), "cotton": ("de algodón", "en coton", "de algodão"),
    "polyester": ("de poliéster", "en polyester", "de poliéster"),
    "nylon": ("de nailon", "en nylon", "de náilon"), "mesh": ("de malla", "en maille", "de malha"),
    "fabric": ("de tela", "en tissu", "de tecido"), "plastic": ("de plástico", "en plastique", "de plástico"),
    "glass": ("de vidrio", "en verre", "de vidro"), "aluminium": ("de aluminio", "en aluminium", "de alumínio"),
    "stainless steel": ("de acero inoxidable", "en acier inoxydable", "de aço inoxidável"),
}
# size kind -> (title form, {language: query form})
SIZES = {
    "apparel": ("Size {v}", {"en": "size {v}", "es": "talla {v}", "fr": "taille {v}", "pt": "tamanho {v}"}),
    "shoe": ("EU {v}", {"en": "size {v}", "es": "talla {v}", "fr": "pointure {v}", "pt": "número {v}"}),
    "screen": ("{v} Inch", {"en": "{v} inch", "es": "{v} pulgadas", "fr": "{v} pouces", "pt": "{v} polegadas"}),
    "watch": ("{v}", {"en": "{v}", "es": "{v}", "fr": "{v}", "pt": "{v}"}),
}

# Per category: English title nouns; query words per language as "plain, ... / substitute, ...",
# where no substitute shares a word with any title noun (a lexical gap, the meaning unchanged:
# functional substitutes and regional synonyms); fictional brands; attribute values; accessories;
# related ("near") categories for hard category mismatches.
CATEGORIES = {
    "smartphone": dict(
        nouns=("Smartphone", "Mobile Phone"),
        words={"en": "smartphone, mobile phone / cellphone, handset",
               "es": "smartphone, teléfono móvil / celular, móvil libre",
               "fr": "smartphone, téléphone portable / gsm, portable débloqué",
               "pt": "smartphone, celular / telemóvel, telefone celular"},
        brands=("Voltaro", "Nexora", "Zentrix", "Kovalin", "Pixavo"),
        attributes={"colour": ("black", "white", "blue", "green", "pink", "silver"),
                    "capacity": ("64GB", "128GB", "256GB", "512GB")},
        accessories=("Phone Case", "Screen Protector", "Fast Charger"), near=("smartwatch", "headphones")),
    "laptop": dict(
        nouns=("Laptop", "Ultrathin Laptop"),
        words={"en": "laptop / notebook computer, notebook pc",
               "es": "portátil, ordenador portátil / computadora portátil, notebook",
               "fr": "ordinateur portable, pc portable / ultraportable, notebook",
               "pt": "notebook, laptop / computador portátil, portátil"},
        brands=("Voltaro", "Nexora", "Zentrix", "Kovalin"),
        attributes={"colour": ("silver", "grey", "black", "blue"),
                    "capacity": ("256GB SSD", "512GB SSD", "1TB SSD"), "size": ("13.3", "14", "15.6", "16")},
        size_kind="screen",
        accessories=("Laptop Sleeve", "USB-C Charger", "Keyboard Cover"), near=("smartphone", "backpack")),
    "headphones": dict(
        nouns=("Headphones", "Wireless Headphones", "In-Ear Headphones"),
        words={"en": "headphones, wireless headphones / earbuds, earphones",
               "es": "auriculares, auriculares inalámbricos / audífonos, cascos",
               "fr": "casque audio, casque sans fil / écouteurs, oreillettes",
               "pt": "fones de ouvido / auscultadores, fone bluetooth"},
        brands=("Voltaro", "Nexora", "Zentrix", "Sonarq"),
        attributes={"colour": ("black", "white", "blue", "pink", "grey")},
        accessories=("Replacement Ear Pads", "Carrying Case"), near=("smartphone", "smartwatch")),
    "running shoes": dict(
        nouns=("Running Shoes", "Jogging Shoes"),
        words={"en": "running shoes / sneakers, trainers",
               "es": "zapatillas de running, zapatillas para correr / tenis para correr, deportivas",
               "fr": "chaussures de running, chaussures de course / baskets, tennis de course",
               "pt": "tênis de corrida / sapatilhas de corrida, tênis esportivo"},
        brands=("Kestrun", "Altavia", "Rovana", "Pacefin"),
        attributes={"colour": ("black", "white", "blue", "red", "grey", "pink"),
                    "size": ("38", "39", "40", "41", "42", "43", "44", "45"), "material": ("mesh", "leather")},
        size_kind="shoe",
        accessories=("Shoelaces", "Cushioned Insoles"), near=("t-shirt", "backpack")),
    "coffee maker": dict(
        nouns=("Coffee Maker", "Coffee Machine"),
        words={"en": "coffee maker, coffee machine / drip brewer, percolator",
               "es": "cafetera / máquina de café, cafetera de goteo",
               "fr": "cafetière, machine à café / percolateur, cafetière filtre",
               "pt": "cafeteira, máquina de café / cafeteira elétrica, máquina de fazer café"},
        brands=("Casavo", "Brewlin", "Domelo", "Kitchora"),
        attributes={"colour": ("black", "silver", "red", "white"), "capacity": ("1.2L", "1.5L", "1.8L"),
                    "material": ("stainless steel", "plastic")},
        accessories=("Paper Filters", "Glass Carafe", "Descaling Kit"), near=("blender",)),
    "cordless drill": dict(
        nouns=("Cordless Drill", "Drill Driver"),
        words={"en": "cordless drill, drill / power screwdriver, screw gun",
               "es": "taladro inalámbrico, taladro / atornillador, taladro atornillador",
               "fr": "perceuse sans fil, perceuse / visseuse, perceuse-visseuse",
               "pt": "furadeira sem fio, furadeira / berbequim, parafusadeira"},
        brands=("Torkmann", "Ferrovox", "Boltrix", "Grinvald"),
        attributes={"colour": ("black", "green", "blue", "red"), "capacity": ("2.0Ah", "4.0Ah", "5.0Ah")},
        accessories=("Drill Bit Set", "Spare Battery", "Battery Charger"), near=("vacuum cleaner",)),
    "backpack": dict(
        nouns=("Backpack", "Daypack"),
        words={"en": "backpack / rucksack, knapsack",
               "es": "mochila / morral, mochila de viaje",
               "fr": "sac à dos / sac de randonnée, sac à dos de voyage",
               "pt": "mochila / bolsa de costas, mochila de viagem"},
        brands=("Kestrun", "Altavia", "Trailmo", "Deskari"),
        attributes={"colour": ("black", "grey", "blue", "green", "red"), "capacity": ("20L", "30L", "40L"),
                    "material": ("nylon", "polyester", "leather")},
        accessories=("Rain Cover", "Chest Strap"), near=("water bottle", "t-shirt")),
    "water bottle": dict(
        nouns=("Water Bottle", "Sports Bottle"),
        words={"en": "water bottle / canteen, reusable flask",
               "es": "botella de agua / cantimplora, termo",
               "fr": "gourde, bouteille d'eau / bidon, bouteille isotherme",
               "pt": "garrafa de água / cantil, squeeze"},
        brands=("Kestrun", "Altavia", "Pacefin", "Trailmo"),
        attributes={"colour": ("black", "white", "blue", "green", "pink"), "capacity": ("500ml", "750ml", "1L"),
                    "material": ("stainless steel", "plastic", "glass")},
        accessories=("Replacement Lid", "Straw Lid", "Bottle Brush"), near=("backpack",)),
    "camera": dict(
        nouns=("Digital Camera", "Mirrorless Camera"),
        words={"en": "camera, digital camera / point and shoot",
               "es": "cámara digital, cámara de fotos / cámara fotográfica",
               "fr": "appareil photo, appareil photo numérique / compact numérique, hybride",
               "pt": "câmera digital, câmera fotográfica / máquina fotográfica, câmara fotográfica"},
        brands=("Voltaro", "Zentrix", "Pixavo", "Lumetta"),
        attributes={"colour": ("black", "silver", "white")},
        accessories=("Lens Cap", "Travel Tripod", "Camera Bag"), near=("smartphone",)),
    "t-shirt": dict(  # no accessories: accessory mismatch is not built for t-shirt queries
        nouns=("T-Shirt",),
        words={"en": "t-shirt, tshirt / tee, crew neck top",
               "es": "camiseta / playera, remera",
               "fr": "t-shirt, tee-shirt / haut manches courtes, maillot",
               "pt": "camiseta / camisa manga curta, blusa básica"},
        brands=("Kestrun", "Rovana", "Pacefin", "Trailmo"),
        attributes={"colour": ("black", "white", "blue", "red", "grey", "green"), "size": ("S", "M", "L", "XL"),
                    "material": ("cotton", "polyester")},
        size_kind="apparel", accessories=(), near=("running shoes",)),
    "vacuum cleaner": dict(
        nouns=("Stick Vacuum", "Cordless Vacuum"),
        words={"en": "vacuum cleaner, vacuum / floor cleaner, suction cleaner",
               "es": "aspiradora / aspirador, aspiradora escoba",
               "fr": "aspirateur / aspirateur balai, aspirateur sans fil",
               "pt": "aspirador de pó / aspirador, aspirador vertical"},
        brands=("Kovalin", "Casavo", "Domelo", "Torkmann", "Boltrix"),
        attributes={"colour": ("grey", "red", "white", "black", "blue"), "capacity": ("0.5L", "0.8L", "1.2L")},
        accessories=("HEPA Filter", "Replacement Brush Roll", "Dust Bags"), near=("cordless drill",)),
    "smartwatch": dict(
        nouns=("Smartwatch", "GPS Smartwatch"),
        words={"en": "smartwatch, smart watch / fitness watch, fitness tracker",
               "es": "reloj inteligente, smartwatch / reloj conectado, reloj deportivo",
               "fr": "montre connectée / montre intelligente, montre sport",
               "pt": "relógio inteligente, smartwatch / relógio conectado, relógio esportivo"},
        brands=("Voltaro", "Nexora", "Kovalin", "Sonarq", "Lumetta", "Kestrun"),
        attributes={"colour": ("black", "silver", "pink", "green", "blue"), "size": ("41mm", "45mm"),
                    "material": ("aluminium", "stainless steel")},
        size_kind="watch",
        accessories=("Watch Strap", "Charging Cable", "Screen Protector"), near=("smartphone", "headphones")),
    "blender": dict(
        nouns=("Blender", "Countertop Blender"),
        words={"en": "blender / smoothie maker, liquidizer",
               "es": "licuadora / batidora de vaso, batidora",
               "fr": "blender, mixeur / mélangeur, blendeur",
               "pt": "liquidificador / liquidificadora, misturador"},
        brands=("Casavo", "Brewlin", "Domelo", "Kitchora"),
        attributes={"colour": ("black", "white", "red", "silver"), "capacity": ("1L", "1.5L", "2L"),
                    "material": ("glass", "plastic")},
        accessories=("Replacement Jar", "Blade Assembly"), near=("coffee maker",)),
    "office chair": dict(
        nouns=("Office Chair", "Desk Chair", "Ergonomic Office Chair"),
        words={"en": "office chair / task seat, swivel seat",
               "es": "silla de oficina / silla de escritorio, silla giratoria",
               "fr": "chaise de bureau / fauteuil de bureau, siège de bureau",
               "pt": "cadeira de escritório / cadeira giratória, cadeira de computador"},
        brands=("Domelo", "Posturo", "Deskari", "Sedalia"),
        attributes={"colour": ("black", "grey", "white", "blue"), "material": ("mesh", "leather", "fabric")},
        accessories=("Chair Casters", "Seat Cushion", "Armrest Pads"), near=("laptop",)),
}
LINES = ("Nova", "Pulse", "Edge", "Aero", "Vista", "Core", "Flex", "Prime", "Zen", "Orbit", "Swift", "Terra")
TITLE_TEMPLATES = ("{brand} {line} {model} {noun} {attrs}", "{brand} {noun} {line} {model} {attrs}",
                   "{brand} {line} {model} {attrs} {noun}", "{noun} {brand} {line} {model}, {attrs}")
ACCESSORY_TEMPLATES = {  # series: fits a product line; named: repeats the product's full name (hard)
    False: ("{acc} for {brand} {line} Series", "{acc} Compatible with {brand} {line} Series"),
    True: ("{acc} for {brand} {line} {model} {noun} {attrs}", "{brand} {line} {model} {noun} {acc}, {attrs}"),
}
TITLE_PREFIXES = ("2024 New", "Original", "Official", "Genuine")
TITLE_SUFFIXES = ("Free Shipping", "Fast Delivery", "Top Rated", "Best Seller")
MODEL_LETTERS = "ABCDEFGHJKLMNPRSTVWXZ"

FAMILIES_PER_BRAND = 2   # model_other needs a second family of the same brand and category
MODELS_PER_FAMILY = 2    # siblings one digit apart: model_near
P_BRAND, P_MODEL, P_ATTR = 0.75, 0.6, 0.65   # facets a query states (model only with a brand)
P_NOISE = 0.3


def _split_words(spec: str) -> tuple[tuple[str, ...], tuple[str, ...]]:
    plain, subs = spec.split("/")
    return tuple(w.strip() for w in plain.split(",")), tuple(w.strip() for w in subs.split(","))


QUERY_WORDS = {c: {lang: _split_words(s) for lang, s in spec["words"].items()} for c, spec in CATEGORIES.items()}


# ------------------------------------------------------------------------------------- products
@dataclass(frozen=True)
class Product:
    product_id: str
    category: str   # a CATEGORIES key; for an accessory, its own noun (e.g. "phone case")
    brand: str      # for an accessory, the brand of the product it fits
    line: str
    model: str      # "" for an accessory that fits a whole series
    family: str     # model codes of one family differ in their last digit only
    noun: str       # the category word its title uses
    attrs: tuple[tuple[str, str], ...]   # (attribute, value) in the category's attribute order
    title: str

    def attr(self, name: str) -> str | None:
        return dict(self.attrs).get(name)


def _pid(*parts: str) -> str:
    return "p" + hashlib.sha1("|".join(parts).encode()).hexdigest()[:10]


def _title_attr(category: str, name: str, value: str) -> str:
    if name in ("colour", "material"):
        return value.title()
    if name == "size":
        return SIZES[CATEGORIES[category]["size_kind"]][0].format(v=value)
    return value


def _query_attr(category: str, name: str, value: str, lang: str) -> str:
    i = ("es", "fr", "pt").index(lang) if lang != "en" else None
    if name == "colour":
        return value if i is None else COLOURS[value][i]
    if name == "material":
        return value if i is None else MATERIALS[value][i]
    if lang != "en":  # decimal comma outside English: "1.5L" is written "1,5l"
        value = value.replace(".", ",")
    if name == "size":
        return SIZES[CATEGORIES[category]["size_kind"]][1][lang].format(v=value)
    return value


def _attr_text(category: str, attrs) -> str:
    return " ".join(_title_attr(category, a, v) for a, v in attrs)


def _noise(rng: random.Random) -> tuple[str, str]:
    """Marketplace noise around a title: a leading promo word, a trailing shipping promise."""
    pre = rng.choice(TITLE_PREFIXES) + " " if rng.random() < P_NOISE else ""
    post = " - " + rng.choice(TITLE_SUFFIXES) if rng.random() < P_NOISE else ""
    return pre, post


class Catalogue:
    """Products by category, built once from the seed."""

    def __init__(self, seed: int, rng: random.Random):
        self.seed = seed
        self.by_category: dict[str, list[Product]] = {}
        taken: set[str] = set()
        for category, spec in CATEGORIES.items():
            items: list[Product] = []
            for brand in spec["brands"]:
                prefix = rng.choice(MODEL_LETTERS) + rng.choice(MODEL_LETTERS)
                while prefix in taken:   # a prefix names one brand's models in one category
                    prefix = rng.choice(MODEL_LETTERS) + rng.choice(MODEL_LETTERS)
                taken.add(prefix)
                for lead in rng.sample(range(1, 10), FAMILIES_PER_BRAND):
                    stem = f"{prefix}-{lead}{rng.randrange(100):02d}"
                    models = [f"{stem}{d}" for d in sorted(rng.sample(range(10), MODELS_PER_FAMILY))]
                    line = rng.choice(LINES)
                    # One style per family: siblings and variants then differ from each other in
                    # exactly the token that changed, which is what makes near cases hard.
                    noun, template = rng.choice(spec["nouns"]), rng.choice(TITLE_TEMPLATES)
                    pre, post = _noise(rng)
                    k = 3 if len(spec["attributes"]) == 1 else 2
                    offered = [[(a, v) for v in rng.sample(values, k)] for a, values in spec["attributes"].items()]
                    for model in models:
                        for attrs in itertools.product(*offered):
                            core = template.format(brand=brand, line=line, model=model, noun=noun,
                                                   attrs=_attr_text(category, attrs))
                            items.append(Product(_pid(category, brand, model, repr(attrs)), category, brand,
                                                 line, model, stem, noun, tuple(attrs), pre + core + post))
            self.by_category[category] = items

    def clone(self, t: Product, brand: str) -> Product:
        """The target's listing under another brand: only the brand token differs."""
        return Product(_pid("clone", brand, t.product_id), t.category, brand, t.line, t.model, t.family,
                       t.noun, t.attrs, t.title.replace(t.brand, brand, 1))

    def accessory(self, t: Product, acc: str, named: bool) -> Product:
        key = (acc, t.product_id) if named else (acc, t.category, t.brand, t.line)
        pid = _pid("acc", *key)
        rng = random.Random(f"{self.seed}|{pid}")
        core = rng.choice(ACCESSORY_TEMPLATES[named]).format(
            acc=acc, brand=t.brand, line=t.line, model=t.model, noun=t.noun,
            attrs=_attr_text(t.category, t.attrs))
        pre, post = _noise(rng)
        return Product(pid, acc.lower(), t.brand, t.line, t.model if named else "", t.family if named else "",
                       acc, t.attrs if named else (), pre + core + post)


# -------------------------------------------------------------------------------------- queries
@dataclass(frozen=True)
class Query:
    target: Product
    brand: bool
    model: bool
    attr: str | None
    substitute: bool
    lang: str
    text: str

    def matches(self, p: Product, *, attr: bool = True) -> bool:
        t = self.target
        return (p.category == t.category and (not self.brand or p.brand == t.brand)
                and (not self.model or p.model == t.model)
                and (not attr or self.attr is None or p.attr(self.attr) == t.attr(self.attr)))


def _draw_query(rng: random.Random, cat: Catalogue, lang: str, hard_rate: float) -> Query:
    category = rng.choice(list(CATEGORIES))
    t = rng.choice(cat.by_category[category])
    brand = rng.random() < P_BRAND
    model = brand and rng.random() < P_MODEL
    attr = rng.choice([a for a, _ in t.attrs]) if rng.random() < P_ATTR else None
    substitute = rng.random() < hard_rate
    plain, subs = QUERY_WORDS[category][lang]
    style = LANGUAGES[lang]
    text = rng.choice(style["templates"]).format(
        cat=rng.choice(subs if substitute else plain), brand=t.brand if brand else "",
        model=t.model if model else "", attr=_query_attr(category, attr, t.attr(attr), lang) if attr else "")
    noise = rng.random()
    if noise < P_NOISE / 2:
        text = rng.choice(style["prefixes"]) + " " + text
    elif noise < P_NOISE:
        text = text + " " + rng.choice(style["suffixes"])
    return Query(t, brand, model, attr, substitute, lang, " ".join(text.lower().split()))


def _candidates(cat: Catalogue, q: Query, label: str, hard: bool) -> tuple[str, list[Product]]:
    """The construction case and the products that carry `label` for query `q`."""
    t, a = q.target, q.attr
    same = cat.by_category[t.category]
    keeps_attr = lambda p: a is None or p.attr(a) == t.attr(a)  # noqa: E731
    if label == RELEVANT:
        return ("substitute" if q.substitute else "exact"), [p for p in same if q.matches(p)]
    if label == BRAND:
        if hard:
            return "brand_near", [cat.clone(t, b) for b in CATEGORIES[t.category]["brands"] if b != t.brand]
        return "brand_swap", [p for p in same if p.brand != t.brand and keeps_attr(p)]
    if label == CATEGORY:
        near = CATEGORIES[t.category]["near"]
        if hard:  # a related category, of the same brand and colour where the catalogue has one
            pool = [p for c in near for p in cat.by_category[c]]
            pool = [p for p in pool if p.brand == t.brand] or pool
            pool = [p for p in pool if p.attr("colour") == t.attr("colour")] or pool
            return "category_near", pool
        return "other_category", [p for c in CATEGORIES if c != t.category and c not in near
                                  for p in cat.by_category[c]]
    if label == MODEL:
        if hard:  # a sibling one digit apart, every attribute the same
            return "model_near", [p for p in same if p.family == t.family and p.model != t.model
                                  and p.attrs == t.attrs]
        return "model_other", [p for p in same if p.brand == t.brand and p.family != t.family and keeps_attr(p)]
    if label == ATTRIBUTE:
        if hard:  # the target itself with only the stated attribute changed
            return "attribute_near", [p for p in same if p.model == t.model and p.attr(a) != t.attr(a)
                                      and all(v == t.attr(n) for n, v in p.attrs if n != a)]
        return "attribute_swap", [p for p in same if q.matches(p, attr=False) and p.attr(a) != t.attr(a)]
    accs = CATEGORIES[t.category]["accessories"]
    return ("accessory_named" if hard else "accessory"), [cat.accessory(t, x, hard) for x in accs]


def _feasible(q: Query) -> list[str]:
    needs = {BRAND: q.brand, MODEL: q.model, ATTRIBUTE: q.attr is not None,
             ACCESSORY: bool(CATEGORIES[q.target.category]["accessories"])}
    return [lab for lab in LABELS if needs.get(lab, True)]


def _pick_label(rng: random.Random, options: list[str], counts: dict[str, int], used: list[str]) -> str:
    """Favour the labels furthest below an equal share so far, and labels new to this query:
    facets limit which labels a query allows, and this keeps the overall mix balanced."""
    fair = (sum(counts.values()) + 1) / len(LABELS)
    weights = [(max(fair - counts[lab], 0.0) + 0.1) * (0.2 if lab in used else 1.0) for lab in options]
    return rng.choices(options, weights)[0]


# ------------------------------------------------------------------------------------ the table
def generate_catalogue(cfg: CatalogueConfig, seed: int) -> pd.DataFrame:
    """`cfg.n_queries * cfg.pairs_per_query` judged pairs in the canonical shape, plus provenance:
    product_id, case, hard, the product's brand/category/model/attributes and the facets the query
    states (query_category/brand/model/attribute; "" where unstated). Queries are unique texts and a
    query never repeats a title, so no (query, title) pair occurs twice. Deterministic in (cfg, seed)."""
    rng = random.Random(seed)
    cat = Catalogue(seed, rng)
    langs = sorted(lang for lang, w in cfg.languages.items() if w > 0)  # sorted: key order is no input
    weights = [cfg.languages[lang] for lang in langs]
    rate = cfg.hard_case_rate
    counts = dict.fromkeys(LABELS, 0)
    seen: set[str] = set()
    rows = []
    width = max(5, len(str(cfg.n_queries - 1)))
    for qi in range(cfg.n_queries):
        lang = rng.choices(langs, weights)[0]
        for _ in range(1000):
            q = _draw_query(rng, cat, lang, rate)
            if q.text not in seen:
                break
        else:
            raise ValueError(f"could not write {cfg.n_queries} distinct queries from the embedded catalogue; "
                             "lower data.catalogue.n_queries or add languages")
        seen.add(q.text)
        t = q.target
        used_titles: set[str] = set()
        used: list[str] = []
        options = _feasible(q)
        while len(used) < cfg.pairs_per_query:
            pool = list(options)
            if len(used) == cfg.pairs_per_query - 1 and len(set(used)) == 1 and len(pool) > 1:
                pool = [lab for lab in pool if lab != used[0]]   # never one label for a whole query
            if not pool:
                raise ValueError(f"query {q.text!r} ran out of distinct titles; lower pairs_per_query")
            label = _pick_label(rng, pool, counts, used)
            hard = q.substitute if label == RELEVANT else rng.random() < rate
            case, cands = _candidates(cat, q, label, hard)
            cands = [p for p in cands if p.title not in used_titles]
            if not cands and hard and label != RELEVANT:   # the hard form does not exist: plain form
                hard = False
                case, cands = _candidates(cat, q, label, hard)
                cands = [p for p in cands if p.title not in used_titles]
            if not cands:
                options.remove(label)
                continue
            p = rng.choice(cands)
            own = p.category if p.category in CATEGORIES else t.category  # a named accessory: its product's
            used_titles.add(p.title)
            used.append(label)
            counts[label] += 1
            rows.append({
                "query_id": f"q{qi:0{width}d}", "query": q.text, "title": p.title, "label": label,
                "locale": lang, "product_id": p.product_id, "case": case, "hard": case in HARD_CASES,
                "brand": p.brand, "category": p.category, "model": p.model,
                "attributes": "; ".join(f"{a}={_title_attr(own, a, v)}" for a, v in p.attrs),
                "query_category": t.category, "query_brand": t.brand if q.brand else "",
                "query_model": t.model if q.model else "",
                "query_attribute": f"{q.attr}={_title_attr(t.category, q.attr, t.attr(q.attr))}" if q.attr else "",
            })
    df = pd.DataFrame(rows)
    df.insert(0, "pair_id", [f"cat-{i:0{max(6, len(str(len(df) - 1)))}d}" for i in range(len(df))])
    df["hard"] = df["hard"].astype(bool)
    return schema.canonical(df, "catalogue")
