"""The words of the sample data: lookups, places and names of a Greek network.

Plain data only, so that the generator reads as logic and a change of wording is
a change here. Enhydris was born at the NTUA's ITIA, hence the Greek flavour.
"""

# (description, description in the alternative language)
EVENT_TYPES = [
    ("Inspection", "Επιθεώρηση"),
    ("Maintenance", "Συντήρηση"),
    ("Calibration", "Βαθμονόμηση"),
    ("Malfunction", "Βλάβη"),
    ("Relocation", "Μετεγκατάσταση"),
    ("Vandalism", "Βανδαλισμός"),
]

# (description, MIME type, file name suffix); the generator writes text and CSV files.
FILE_TYPES = [
    ("Measurements extract", "text/csv", "csv"),
    ("Field notes", "text/plain", "txt"),
    ("Photograph", "image/jpeg", "jpg"),
    ("Technical report", "application/pdf", "pdf"),
]
WRITTEN_FILE_TYPES = ("text/csv", "text/plain")

ALT_CODE_TYPES = ["WMO", "Hydroscope", "National network", "Operator's code"]

INSTRUMENT_TYPES = [
    "Raingauge",
    "Thermometer",
    "Hygrometer",
    "Anemometer",
    "Barometer",
    "Pyranometer",
    "Stage recorder",
    "Pressure transducer",
    "Data logger",
]

# manufacturer -> models
INSTRUMENT_MODELS = {
    "Campbell Scientific": ["CR1000X", "CS215", "CS451"],
    "Vaisala": ["HMP155", "WXT536", "PTB110"],
    "OTT HydroMet": ["Pluvio2", "Orpheus Mini", "RLS"],
    "Lambrecht": ["rain[e]", "14521"],
    "Thies Clima": ["4.3352", "WSC11"],
    "Siap+Micros": ["TTEP", "UM7525"],
}

# Units: (description, symbol)
UNITS = [
    ("millimetre", "mm"),
    ("degree Celsius", "°C"),
    ("percent", "%"),
    ("metre per second", "m/s"),
    ("kilometre per hour", "km/h"),
    ("degree", "°"),
    ("hectopascal", "hPa"),
    ("watt per square metre", "W/m²"),
    ("metre", "m"),
    ("centimetre", "cm"),
    ("cubic metre per second", "m³/s"),
]

# Variable: (alternative description, unit symbols (first is usual), precision)
VARIABLES = {
    "Precipitation": ("Βροχόπτωση", ["mm"], 1),
    "Air temperature": ("Θερμοκρασία αέρα", ["°C"], 1),
    "Relative humidity": ("Σχετική υγρασία", ["%"], 0),
    "Wind speed": ("Ταχύτητα ανέμου", ["m/s", "km/h"], 1),
    "Wind direction": ("Διεύθυνση ανέμου", ["°"], 0),
    "Atmospheric pressure": ("Ατμοσφαιρική πίεση", ["hPa"], 1),
    "Solar radiation": ("Ηλιακή ακτινοβολία", ["W/m²"], 0),
    "Evaporation": ("Εξάτμιση", ["mm"], 1),
    "Water level": ("Στάθμη", ["m", "cm"], 2),
    "Discharge": ("Παροχή", ["m³/s"], 3),
    "Groundwater level": ("Στάθμη υπόγειου νερού", ["m"], 2),
    "Snow depth": ("Ύψος χιονιού", ["cm"], 0),
}

# The shape of a variable's sample records: (mean, amplitude of the daily cycle,
# standard deviation of the noise, lowest, highest), in the variable's first unit.
RECORD_SHAPES = {
    "Precipitation": (-0.8, 0.0, 0.6, 0.0, 50.0),
    "Air temperature": (16.0, 5.0, 1.5, -30.0, 50.0),
    "Relative humidity": (65.0, -15.0, 6.0, 0.0, 100.0),
    "Wind speed": (3.5, 1.5, 1.2, 0.0, 40.0),
    "Wind direction": (180.0, 40.0, 60.0, 0.0, 359.0),
    "Atmospheric pressure": (1013.0, 1.0, 3.0, 950.0, 1060.0),
    "Solar radiation": (120.0, 250.0, 40.0, 0.0, 1200.0),
    "Evaporation": (0.1, 0.1, 0.05, 0.0, 5.0),
    "Water level": (1.2, 0.0, 0.3, 0.0, 10.0),
    "Discharge": (3.0, 0.0, 1.5, 0.0, 500.0),
    "Groundwater level": (25.0, 0.0, 0.5, 0.0, 200.0),
    "Snow depth": (-20.0, 0.0, 30.0, 0.0, 400.0),
}

METEO = ["Air temperature", "Relative humidity", "Wind speed", "Wind direction"]
# Station type: (alternative description, variables it measures)
STATION_TYPES = {
    "Meteorological": ("Μετεωρολογικός", METEO + ["Atmospheric pressure", "Solar radiation"]),
    "Raingauge": ("Βροχομετρικός", ["Precipitation"]),
    "Hydrometric": ("Υδρομετρικός", ["Water level", "Discharge"]),
    "Hydrometeorological": ("Υδρομετεωρολογικός", ["Precipitation", "Water level"] + METEO),
    "Groundwater (borehole)": ("Γεώτρηση", ["Groundwater level"]),
    "Snow": ("Χιονομετρικός", ["Snow depth", "Air temperature"]),
    "Evaporation pan": ("Εξατμισίμετρο", ["Evaporation", "Air temperature"]),
}

# (description, length in minutes, length in months): minutes XOR months.
TIME_STEPS = [
    ("10-minute", 10, 0),
    ("Hourly", 60, 0),
    ("Daily", 1440, 0),
    ("Monthly", 0, 1),
    ("Annual", 0, 12),
]

# (code, offset from UTC in minutes)
TIME_ZONES = [("UTC", 0), ("CET", 60), ("EET", 120), ("EEST", 180)]

# The 14 water districts of Greece.
WATER_DIVISIONS = [
    ("GR01", "Western Peloponnese"),
    ("GR02", "Northern Peloponnese"),
    ("GR03", "Eastern Peloponnese"),
    ("GR04", "Western Sterea Ellada"),
    ("GR05", "Epirus"),
    ("GR06", "Attica"),
    ("GR07", "Eastern Sterea Ellada"),
    ("GR08", "Thessaly"),
    ("GR09", "Western Macedonia"),
    ("GR10", "Central Macedonia"),
    ("GR11", "Eastern Macedonia"),
    ("GR12", "Thrace"),
    ("GR13", "Crete"),
    ("GR14", "Aegean Islands"),
]

# River basin: index into WATER_DIVISIONS.
RIVER_BASINS = {
    "Alfeios": 0,
    "Pamisos": 0,
    "Peiros": 1,
    "Vouraikos": 1,
    "Evrotas": 2,
    "Inachos": 2,
    "Acheloos": 3,
    "Evinos": 3,
    "Mornos": 3,
    "Arachthos": 4,
    "Kalamas": 4,
    "Louros": 4,
    "Aoos": 4,
    "Kifisos (Attica)": 5,
    "Asopos": 6,
    "Sperchios": 6,
    "Kifisos (Boeotia)": 6,
    "Pinios": 7,
    "Aliakmonas": 8,
    "Axios": 9,
    "Gallikos": 9,
    "Loudias": 9,
    "Strymonas": 10,
    "Nestos": 11,
    "Evros": 11,
    "Geropotamos": 12,
    "Anapodaris": 12,
    "Aegean island streams": 13,
}

# The 13 administrative regions of Greece, with their ISO 3166-2 letters.
REGIONS = [
    ("A", "Eastern Macedonia and Thrace"),
    ("B", "Central Macedonia"),
    ("C", "Western Macedonia"),
    ("D", "Epirus"),
    ("E", "Thessaly"),
    ("F", "Ionian Islands"),
    ("G", "Western Greece"),
    ("H", "Central Greece"),
    ("I", "Attica"),
    ("J", "Peloponnese"),
    ("K", "North Aegean"),
    ("L", "South Aegean"),
    ("M", "Crete"),
]

PLACES = [
    "Agia",
    "Agrinio",
    "Amfissa",
    "Arta",
    "Aspropyrgos",
    "Chania",
    "Drama",
    "Edessa",
    "Florina",
    "Grevena",
    "Ioannina",
    "Kalamata",
    "Kalavryta",
    "Karditsa",
    "Karpenisi",
    "Kastoria",
    "Katerini",
    "Kerkyra",
    "Kilkis",
    "Komotini",
    "Korinthos",
    "Kozani",
    "Lamia",
    "Larisa",
    "Livadeia",
    "Metsovo",
    "Mesologgi",
    "Nafplio",
    "Naxos",
    "Orestiada",
    "Patra",
    "Preveza",
    "Pyrgos",
    "Rethymno",
    "Serres",
    "Sparti",
    "Trikala",
    "Tripoli",
    "Veroia",
    "Volos",
    "Xanthi",
    "Zagora",
]
FEATURES = ["Bridge", "Dam", "Spring", "Gorge", "Village", "Plateau", "Lake", "Ridge"]

FIRST_NAMES = [
    "Andreas",
    "Anna",
    "Christos",
    "Dimitra",
    "Dimitris",
    "Eleni",
    "Georgia",
    "Giorgos",
    "Ioanna",
    "Katerina",
    "Konstantinos",
    "Maria",
    "Nikos",
    "Panagiotis",
    "Sofia",
    "Stefanos",
    "Theodora",
    "Vasilis",
    "Zoe",
    "Antonis",
]
LAST_NAMES = [
    "Alexiou",
    "Antoniou",
    "Christodoulou",
    "Dimitriou",
    "Efstratiadis",
    "Georgiou",
    "Ioannou",
    "Karavokyros",
    "Koutsoyiannis",
    "Makropoulos",
    "Mamassis",
    "Nikolaou",
    "Oikonomou",
    "Papadopoulos",
    "Papageorgiou",
    "Stavridis",
    "Theodorou",
    "Vasileiou",
]

ORGANIZATIONS = [
    ("National Technical University of Athens", "NTUA"),
    ("Hellenic National Meteorological Service", "HNMS"),
    ("Ministry of Environment and Energy", "YPEN"),
    ("Public Power Corporation", "PPC"),
    ("Athens Water Supply and Sewerage Company", "EYDAP"),
    ("National Observatory of Athens", "NOA"),
    ("Hellenic Centre for Marine Research", "HCMR"),
]

EVENT_REPORTS = [
    "Routine visit; all sensors working.",
    "Cleaned the funnel and checked the tipping bucket.",
    "Replaced the logger's battery.",
    "Sensor drift found and corrected against a reference.",
    "Fence damaged; repaired on site.",
    "Station moved a few metres because of road works.",
]
