"""Word lists of the synthetic dataset: genres, text-only themes, title words, demographics.

Kept apart from the generator so the model code stays readable. Nothing here is random; ``synthetic.py``
draws from these tables with its own seeded generator.
"""

from __future__ import annotations

from dataclasses import dataclass

# The 18 MovieLens-1M genres, with the number of ML-1M movies carrying each one (used as a prior).
GENRE_COUNTS: dict[str, int] = {
    "Drama": 1603, "Comedy": 1200, "Action": 503, "Thriller": 492, "Romance": 471, "Horror": 343,
    "Adventure": 283, "Sci-Fi": 276, "Children's": 251, "Crime": 211, "War": 143, "Documentary": 127,
    "Musical": 114, "Mystery": 106, "Animation": 105, "Western": 68, "Fantasy": 68, "Film-Noir": 44,
}  # fmt: skip
GENRES: tuple[str, ...] = tuple(GENRE_COUNTS)

# Genres that tend to be paired with a primary genre (ML-1M co-occurrence, simplified).
GENRE_PARTNERS: dict[str, tuple[str, ...]] = {
    "Drama": ("Romance", "War", "Crime", "Thriller", "Comedy"),
    "Comedy": ("Romance", "Drama", "Children's", "Musical", "Crime"),
    "Action": ("Thriller", "Adventure", "Sci-Fi", "Crime", "War"),
    "Thriller": ("Crime", "Mystery", "Action", "Horror", "Drama"),
    "Romance": ("Comedy", "Drama", "Musical"),
    "Horror": ("Thriller", "Sci-Fi", "Comedy"),
    "Adventure": ("Action", "Fantasy", "Children's", "Sci-Fi", "Western"),
    "Sci-Fi": ("Action", "Adventure", "Thriller", "Horror"),
    "Children's": ("Animation", "Comedy", "Adventure", "Fantasy", "Musical"),
    "Crime": ("Thriller", "Drama", "Film-Noir", "Action"),
    "War": ("Drama", "Action"),
    "Documentary": ("Musical", "War"),
    "Musical": ("Romance", "Comedy", "Children's"),
    "Mystery": ("Thriller", "Crime", "Film-Noir"),
    "Animation": ("Children's", "Comedy", "Musical", "Fantasy"),
    "Western": ("Action", "Adventure", "Comedy"),
    "Fantasy": ("Adventure", "Children's", "Comedy"),
    "Film-Noir": ("Crime", "Mystery", "Thriller"),
}

# How a genre reads inside a sentence: (adjective before a noun, noun, mood words).
GENRE_TEXT: dict[str, tuple[str, str, tuple[str, ...]]] = {
    "Drama": ("dramatic", "drama", ("moving", "poignant", "quietly devastating")),
    "Comedy": ("comic", "comedy", ("lighthearted", "witty", "zany")),
    "Action": ("action-packed", "action film", ("explosive", "relentless", "high-octane")),
    "Thriller": ("suspenseful", "thriller", ("tense", "gripping", "nerve-racking")),
    "Romance": ("romantic", "romance", ("tender", "heartfelt", "bittersweet")),
    "Horror": ("horror", "horror film", ("eerie", "terrifying", "unsettling")),
    "Adventure": ("adventure", "adventure", ("rousing", "sweeping", "swashbuckling")),
    "Sci-Fi": ("science-fiction", "sci-fi film", ("visionary", "cerebral", "mind-bending")),
    "Children's": ("family", "family film", ("charming", "gentle", "warm-hearted")),
    "Crime": ("crime", "crime story", ("gritty", "hard-boiled", "streetwise")),
    "War": ("war", "war film", ("harrowing", "sobering", "unflinching")),
    "Documentary": ("documentary", "documentary", ("insightful", "eye-opening", "intimate")),
    "Musical": ("musical", "musical", ("toe-tapping", "exuberant", "dazzling")),
    "Mystery": ("mystery", "mystery", ("puzzling", "intriguing", "twisty")),
    "Animation": ("animated", "animated feature", ("colorful", "playful", "imaginative")),
    "Western": ("western", "western", ("rugged", "dusty", "sun-baked")),
    "Fantasy": ("fantasy", "fantasy", ("enchanting", "magical", "otherworldly")),
    "Film-Noir": ("noir", "noir", ("shadowy", "cynical", "smoky")),
}

# Title words that evoke a genre.
GENRE_TITLE_WORDS: dict[str, tuple[str, ...]] = {
    "Drama": ("Silence", "Letters", "Harvest", "River", "Winter", "Promise", "Mercy", "Distance"),
    "Comedy": ("Trouble", "Weekend", "Uncle", "Mix-Up", "Holiday", "Neighbors", "Chaos", "Hiccup"),
    "Action": ("Strike", "Velocity", "Impact", "Fury", "Bullet", "Takedown", "Blast", "Overdrive"),
    "Thriller": ("Pursuit", "Deadline", "Stranger", "Cold Sweat", "Trap", "Witness", "Panic", "Edge"),
    "Romance": ("Heart", "Kiss", "Summer", "Sweetheart", "Serenade", "Moonlight", "Valentine", "Roses"),
    "Horror": ("Shadow", "Crypt", "Whisper", "Curse", "Blood", "Nightmare", "Hollow", "Scream"),
    "Adventure": ("Quest", "Horizon", "Expedition", "Voyage", "Jungle", "Island", "Compass", "Summit"),
    "Sci-Fi": ("Orbit", "Nebula", "Galaxy", "Android", "Quantum", "Starfall", "Colony", "Eclipse"),
    "Children's": ("Puppy", "Treehouse", "Little Bear", "Balloon", "Sleepover", "Kitten", "Rainbow", "Teddy"),
    "Crime": ("Racket", "Hustle", "Dirty Money", "Syndicate", "Alibi", "Badge", "Snitch", "Backstreet"),
    "War": ("Battalion", "Front Line", "Trenches", "Beachhead", "Squadron", "Armistice", "Ridge", "Salute"),
    "Documentary": (
        "Portrait",
        "Naked Truth",
        "Insider View",
        "Chronicle",
        "Record",
        "Witnesses",
        "Footage",
        "Legacy",
    ),
    "Musical": ("Melody", "Rhythm", "Song", "Encore", "Tango", "Showtime", "Chorus", "Jazz"),
    "Mystery": ("Riddle", "Clue", "Secret", "Cipher", "Puzzle", "Enigma", "Locked Room", "Vanishing"),
    "Animation": (
        "Cartoon Town",
        "Doodlebug",
        "Robot Pal",
        "Critters",
        "Pixel",
        "Bubbles",
        "Kingdom",
        "Sprout",
    ),
    "Western": ("Canyon", "Outlaw", "Sheriff", "Frontier", "Dust Devil", "Six-Gun", "Saddle", "Mesa"),
    "Fantasy": ("Dragon", "Wizard", "Realm", "Sorcerer", "Crown", "Enchantress", "Rune", "Amulet"),
    "Film-Noir": ("Dame", "Smoke", "Rainfall", "Neon", "Double Cross", "Dark Passage", "Gumshoe", "Midnight"),
}


@dataclass(frozen=True)
class Theme:
    """A story theme that appears only in the description text, never among the genres.

    Attributes:
        tag: The phrase written verbatim in descriptions (what a tagger or an LLM would extract).
        genres: Genres the theme usually comes with (raises its odds on such items; any pairing can happen).
        phrases: Clauses for a description; each contains ``tag`` literally.
        title_words: Words a title with this theme may use.
    """

    tag: str
    genres: tuple[str, ...]
    phrases: tuple[str, ...]
    title_words: tuple[str, ...]


THEMES: tuple[Theme, ...] = (
    Theme("heist", ("Crime", "Thriller", "Action", "Comedy"),
          ("a crew of thieves plans one last heist", "a meticulously planned heist starts to unravel"),
          ("Heist", "Vault", "Score", "Job")),
    Theme("time travel", ("Sci-Fi", "Adventure", "Comedy", "Fantasy"),
          ("a reluctant inventor stumbles into time travel", "time travel forces a family to relive one day"),
          ("Hourglass", "Clockwork", "Paradox", "Timekeeper")),
    Theme("small town", ("Drama", "Comedy", "Horror", "Mystery"),
          ("a small town hides an old grudge", "life in a small town is upended by a newcomer"),
          ("Main Street", "Hometown", "County", "Crossroads")),
    Theme("coming of age", ("Drama", "Comedy", "Romance", "Children's"),
          ("a coming of age summer changes two best friends",
           "a coming of age story follows a shy teenager"),
          ("Growing Pains", "Sweet Seventeen", "Summer Camp", "Graduation")),
    Theme("revenge", ("Action", "Thriller", "Western", "Crime"),
          ("a quiet widow sets out on revenge", "a betrayed soldier returns for revenge"),
          ("Vengeance", "Payback", "Reckoning", "Retribution")),
    Theme("road trip", ("Comedy", "Drama", "Adventure"),
          ("two estranged brothers share a road trip across the country",
           "a chaotic road trip turns into a rescue mission"),
          ("Highway", "Open Road", "Mile Marker", "Detour")),
    Theme("artificial intelligence", ("Sci-Fi", "Thriller", "Drama"),
          ("an artificial intelligence begins to question its makers",
           "a lonely engineer falls for an artificial intelligence"),
          ("Machine", "Circuit", "Algorithm", "Neural Net")),
    Theme("haunted house", ("Horror", "Mystery", "Comedy"),
          ("a family moves into a haunted house", "a skeptic spends a night in a haunted house"),
          ("Manor", "Attic", "Haunting", "Old House")),
    Theme("space exploration", ("Sci-Fi", "Adventure", "Documentary"),
          ("a crew on a space exploration mission loses contact with Earth",
           "the dangers of space exploration test a young pilot"),
          ("Launch", "Deep Space", "Mission", "Stardust")),
    Theme("courtroom", ("Drama", "Thriller", "Crime"),
          ("a rookie lawyer takes a hopeless courtroom case", "a courtroom battle exposes a cover-up"),
          ("Verdict", "Objection", "Jury", "Testimony")),
    Theme("sports underdog", ("Drama", "Comedy", "Children's", "Documentary"),
          ("a sports underdog team chases an impossible title", "a tired coach bets on a sports underdog"),
          ("Underdog", "Comeback", "Championship", "Final Whistle")),
    Theme("world war", ("War", "Drama", "Action", "Documentary"),
          ("a platoon fights to survive the world war", "a nurse keeps hope alive through the world war"),
          ("Bastion", "Field Hospital", "Platoon", "Home Front")),
    Theme("serial killer", ("Thriller", "Crime", "Horror", "Mystery"),
          ("a detective hunts a serial killer", "a serial killer taunts the city through radio broadcasts"),
          ("Killer", "Pattern", "Profile", "Victim")),
    Theme("dystopia", ("Sci-Fi", "Action", "Drama"),
          ("rebels resist a surveillance dystopia", "a factory worker escapes a crumbling dystopia"),
          ("Sector", "Regime", "Wasteland", "Zone")),
    Theme("forbidden love", ("Romance", "Drama", "Musical"),
          ("a forbidden love blossoms between rival families", "a soldier and a singer hide forbidden love"),
          ("Forbidden Garden", "Secret Heart", "Stolen Kiss", "Star-Crossed")),
    Theme("survival", ("Adventure", "Thriller", "Action", "Drama"),
          ("plane crash victims fight for survival", "a hiker's survival depends on one desperate gamble"),
          ("Lifeline", "Wilderness", "Endurance", "Stranded")),
    Theme("conspiracy", ("Thriller", "Mystery", "Film-Noir", "Crime"),
          ("a journalist uncovers a government conspiracy", "a clerk is framed by a corporate conspiracy"),
          ("Cover-Up", "Dossier", "Insider", "Shadow File")),
    Theme("treasure hunt", ("Adventure", "Children's", "Comedy", "Animation"),
          ("cousins follow an old map on a treasure hunt", "a treasure hunt leads to a sunken galleon"),
          ("Treasure", "Doubloon", "Lost Map", "Buried Gold")),
    Theme("undercover cop", ("Crime", "Action", "Thriller"),
          ("an undercover cop infiltrates a smuggling ring",
           "an undercover cop starts to admire the gang he betrays"),
          ("Cover Story", "Deep Cover", "Informant", "Blue Line")),
    Theme("alien invasion", ("Sci-Fi", "Action", "Horror", "Comedy"),
          ("farmers defend their valley against an alien invasion",
           "an alien invasion interrupts a family reunion"),
          ("Invasion", "Mothership", "Visitors", "First Contact")),
    Theme("rock band", ("Musical", "Comedy", "Documentary", "Drama"),
          ("a rock band reunites for one last tour", "a garage rock band chases its big break"),
          ("Amplifier", "Backstage", "Riff", "Feedback")),
    Theme("family secrets", ("Drama", "Mystery", "Thriller"),
          ("a funeral brings family secrets to light", "a letter reveals family secrets spanning decades"),
          ("Inheritance", "Heirloom", "Bloodline", "Homecoming")),
    Theme("pirates", ("Adventure", "Action", "Children's", "Animation"),
          ("a cabin boy sails with pirates", "pirates race a navy frigate to a hidden cove"),
          ("Buccaneer", "Jolly Roger", "High Seas", "Cutlass")),
    Theme("martial arts", ("Action", "Adventure", "Comedy"),
          ("a martial arts student defends her village", "a retired martial arts master takes one pupil"),
          ("Dragon Fist", "Dojo", "Iron Palm", "Tiger Style")),
    Theme("zombie outbreak", ("Horror", "Action", "Comedy", "Sci-Fi"),
          ("strangers barricade a mall during a zombie outbreak",
           "a zombie outbreak traps a wedding party"),
          ("Undead", "Outbreak", "Infection", "Dead Zone")),
    Theme("political intrigue", ("Drama", "Thriller", "War"),
          ("a speechwriter is drawn into political intrigue", "political intrigue threatens a fragile truce"),
          ("Senate", "Cabinet", "Ambassador", "Capitol")),
    Theme("fairy tale", ("Fantasy", "Children's", "Animation", "Musical", "Romance"),
          ("a fairy tale princess rewrites her own story", "a fairy tale curse binds a lonely baker"),
          ("Storybook", "Glass Slipper", "Enchantment", "Spindle")),
    Theme("high school", ("Comedy", "Romance", "Drama", "Horror"),
          ("a high school prom goes spectacularly wrong", "an outsider takes on the high school elite"),
          ("Homeroom", "Prom Night", "Detention", "Senior Year")),
    Theme("nature", ("Documentary", "Adventure", "Children's", "Animation"),
          ("a year in nature follows a family of wolves", "a filmmaker records nature at the ice edge"),
          ("Wilderness Trail", "Tides", "Migration", "Canopy")),
    Theme("cold war espionage", ("Thriller", "Action", "Film-Noir", "Drama"),
          ("a double agent plays both sides of cold war espionage",
           "cold war espionage turns a chess match deadly"),
          ("Iron Curtain", "Checkpoint", "Mole", "Berlin")),
)  # fmt: skip
THEME_TAGS: tuple[str, ...] = tuple(theme.tag for theme in THEMES)

# Second sentences; ``{clause}`` is a second theme's clause, ``{mood}`` a mood word.
SECOND_SENTENCES: tuple[str, ...] = (
    "Meanwhile, {clause}.",
    "Along the way, {clause}, and the finale is {mood}.",
    "In a parallel story, {clause}.",
    "At the same time, {clause}, and the mood turns {mood}.",
)
ENDINGS: tuple[str, ...] = ("Its ending is {mood}.", "The result is {mood} from start to finish.")
# Critics' verdict words, by quality band (low, high): the kind of fact an LLM states about a film.
VERDICTS: tuple[tuple[str, ...], tuple[str, ...]] = (
    ("uneven", "forgettable", "clumsy"),
    ("critically acclaimed", "award-winning", "beloved"),
)

# Title shapes; {a} and {b} are title words.
TITLE_PATTERNS: tuple[str, ...] = (
    "The {a}", "{a}", "{a} of the {b}", "The Last {a}", "{a} and {b}", "Return to {a}", "The {a} {b}",
    "Beyond the {a}", "{a}: {b}", "Night of the {a}", "Operation {a}", "The {a} Affair",
)  # fmt: skip
TITLE_SUFFIXES: tuple[str, ...] = (" II", " III", ": The Return", ": Reloaded", " Forever", ": Part Two")

# MovieLens-1M occupations (same order as its codes) with ML-1M user counts; the Spark loader in
# ``movielens.py`` keeps its own copy because importing it pulls in pyspark.
OCCUPATION_COUNTS: dict[str, int] = {
    "other": 711, "academic/educator": 528, "artist": 267, "clerical/admin": 173, "college/grad student": 759,
    "customer service": 112, "doctor/health care": 236, "executive/managerial": 679, "farmer": 17,
    "homemaker": 92, "K-12 student": 195, "lawyer": 129, "programmer": 388, "retired": 142,
    "sales/marketing": 302, "scientist": 144, "self-employed": 241, "technician/engineer": 502,
    "tradesman/craftsman": 70, "unemployed": 72, "writer": 281,
}  # fmt: skip
OCCUPATIONS: tuple[str, ...] = tuple(OCCUPATION_COUNTS)
# ML-1M age buckets and their user counts.
AGE_COUNTS: dict[int, int] = {1: 222, 18: 1103, 25: 2096, 35: 1193, 45: 550, 50: 496, 56: 380}
AGES: tuple[int, ...] = tuple(AGE_COUNTS)
MALE_SHARE = 0.717  # ML-1M

# Demographic shifts of genre taste (in taste units; individual taste noise has unit scale).
GENDER_GENRE_SHIFT: dict[str, dict[str, float]] = {
    "M": {"Action": 0.5, "Sci-Fi": 0.5, "War": 0.5, "Western": 0.4, "Crime": 0.3, "Horror": 0.2,
          "Romance": -0.4, "Musical": -0.4, "Children's": -0.2},
    "F": {"Romance": 0.7, "Musical": 0.6, "Drama": 0.4, "Children's": 0.4, "Comedy": 0.2, "Fantasy": 0.2,
          "War": -0.6, "Horror": -0.4, "Western": -0.4, "Action": -0.3, "Film-Noir": -0.2},
}  # fmt: skip
AGE_GENRE_SHIFT: dict[int, dict[str, float]] = {
    1: {"Animation": 0.9, "Children's": 0.9, "Comedy": 0.4, "Fantasy": 0.5, "Adventure": 0.4,
        "Documentary": -0.6, "War": -0.6, "Film-Noir": -0.7, "Drama": -0.4},
    18: {"Horror": 0.5, "Comedy": 0.4, "Action": 0.3, "Sci-Fi": 0.3, "Animation": 0.2,
         "Film-Noir": -0.5, "Western": -0.5, "Documentary": -0.3, "War": -0.3},
    25: {"Action": 0.3, "Sci-Fi": 0.3, "Thriller": 0.3, "Horror": 0.2, "Western": -0.3, "Musical": -0.2},
    35: {"Drama": 0.2, "Crime": 0.3, "Thriller": 0.3, "Mystery": 0.2, "Horror": -0.1},
    45: {"Drama": 0.4, "Mystery": 0.3, "Crime": 0.2, "Documentary": 0.2, "Horror": -0.4, "Animation": -0.3},
    50: {"Drama": 0.4, "War": 0.5, "Western": 0.4, "Documentary": 0.4, "Film-Noir": 0.4, "Musical": 0.3,
         "Horror": -0.6, "Animation": -0.5, "Sci-Fi": -0.3},
    56: {"War": 0.7, "Western": 0.7, "Film-Noir": 0.6, "Musical": 0.5, "Documentary": 0.4, "Drama": 0.4,
         "Horror": -0.8, "Animation": -0.6, "Sci-Fi": -0.4, "Action": -0.3},
}  # fmt: skip
OCCUPATION_GENRE_SHIFT: dict[str, dict[str, float]] = {
    "academic/educator": {"Documentary": 0.5, "Drama": 0.3, "Film-Noir": 0.3, "Action": -0.2},
    "artist": {"Drama": 0.3, "Film-Noir": 0.4, "Musical": 0.4, "Animation": 0.3, "Action": -0.3},
    "college/grad student": {"Comedy": 0.3, "Sci-Fi": 0.2, "Horror": 0.2},
    "doctor/health care": {"Drama": 0.3, "Documentary": 0.3, "Horror": -0.3},
    "executive/managerial": {"Crime": 0.3, "Thriller": 0.3, "Action": 0.2},
    "farmer": {"Western": 0.8, "War": 0.3, "Sci-Fi": -0.3},
    "homemaker": {"Romance": 0.5, "Children's": 0.5, "Comedy": 0.3, "Horror": -0.4},
    "K-12 student": {"Animation": 0.5, "Children's": 0.4, "Comedy": 0.3, "Documentary": -0.4},
    "lawyer": {"Crime": 0.4, "Mystery": 0.4, "Thriller": 0.3, "Drama": 0.2},
    "programmer": {"Sci-Fi": 0.7, "Fantasy": 0.3, "Animation": 0.3, "Romance": -0.3},
    "retired": {"Western": 0.5, "War": 0.5, "Musical": 0.4, "Horror": -0.5},
    "scientist": {"Sci-Fi": 0.6, "Documentary": 0.5, "Mystery": 0.2},
    "technician/engineer": {"Sci-Fi": 0.5, "Action": 0.3, "War": 0.2},
    "tradesman/craftsman": {"Action": 0.4, "Western": 0.4, "War": 0.3, "Musical": -0.3},
    "writer": {"Drama": 0.4, "Film-Noir": 0.5, "Mystery": 0.4, "Documentary": 0.3, "Action": -0.3},
}  # fmt: skip
# Age-driven theme shifts: the only demographic part of theme taste, so themes stay mostly individual.
AGE_THEME_SHIFT: dict[int, dict[str, float]] = {
    1: {"treasure hunt": 0.5, "fairy tale": 0.5, "pirates": 0.3, "serial killer": -0.6, "courtroom": -0.4},
    18: {"high school": 0.4, "zombie outbreak": 0.3, "coming of age": 0.3, "courtroom": -0.2},
    25: {"artificial intelligence": 0.2, "heist": 0.2, "fairy tale": -0.2},
    45: {"family secrets": 0.2, "political intrigue": 0.2, "high school": -0.3},
    50: {"world war": 0.4, "cold war espionage": 0.4, "high school": -0.4, "zombie outbreak": -0.3},
    56: {"world war": 0.5, "cold war espionage": 0.4, "small town": 0.3, "zombie outbreak": -0.5},
}  # fmt: skip
